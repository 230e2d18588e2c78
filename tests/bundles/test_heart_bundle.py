"""End-to-end tests of the heart_mri_segmentation bundle (MSD Task02_Heart, left atrium, one MRI channel), on
synthetic volumes in the task's MSD layout; the checks are shared with the prostate bundle (mri_segmentation_checks)."""

from mri_segmentation_checks import *  # noqa: F401,F403 (the shared tests and fixtures)
from mri_segmentation_checks import Spec

SPEC = Spec(name="heart_mri_segmentation", channels=("MRI",), num_classes=2, slices_per_case=12, eps=(5, 10, 15),
            first_case="la_001.nii.gz")
