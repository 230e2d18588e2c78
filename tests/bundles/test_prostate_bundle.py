"""End-to-end tests of the prostate_mri_segmentation bundle (MSD Task05_Prostate: PZ and TZ from two channels, T2
and ADC, in 4D NIfTI images), on synthetic volumes in the task's MSD layout; the checks are shared with the heart
bundle (mri_segmentation_checks)."""

from mri_segmentation_checks import *  # noqa: F401,F403 (the shared tests and fixtures)
from mri_segmentation_checks import Spec

SPEC = Spec(name="prostate_mri_segmentation", channels=("T2", "ADC"), num_classes=3, slices_per_case=10,
            eps=(10, 20, 40), first_case="prostate_01.nii.gz")
