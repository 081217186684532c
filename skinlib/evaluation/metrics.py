"""The image metrics in one namespace, as the former ``skinlib.metrics`` module offered them.

``from skinlib.evaluation import metrics as M`` then ``M.image_metrics(...)``,
``M.load_folder_images(...)``; each name is defined in one of the modules listed in
:mod:`skinlib.evaluation` (the old path ``skinlib.metrics`` is an alias of this module).
"""
from .images import (FolderImages, MIN_IMAGES, RECOMMENDED_IMAGES, SmallSampleWarning,
                     load_folder_images, warn_sample_size)
from .features import (CorruptWeightsError, FEATURE_CHOICES, FID_HELPER_DIST, FID_HELPER_FILE,
                       FID_HELPER_PACKAGE, FID_HELPER_SHA256, FidHelperInceptionFeatures,
                       INCEPTION_ENV, INCEPTION_FILE, INCEPTION_URL, InceptionFeatures,
                       InceptionWeightsUnavailableError, RandomConvFeatures, extract_features,
                       feature_settings, fid_helper_inception_path, inception_weights_path,
                       make_feature_extractor, metric_labels, nvidia_bilinear_resize)
from .distances import (frechet_distance, kernel_distance)
from .fidelity import (density_coverage, precision_recall)
from .diversity import (MS_SSIM_BETAS, ms_ssim_diversity, ms_ssim_scales)
from .edits import (EDIT_MASK_COLUMNS, SOURCE_COLUMNS, inpainting_change, is_inpainting_folder,
                    source_crop_of)
from .image_metrics import (CONFIDENCE, REAL_TRAIN_ROW, cluster_ids, fid_from_features,
                            flat_image_metrics, folder_features, image_metrics, kid_unbiased)
from .report import (generator_colour, is_random_model_folder, markdown_table, sample_grid_figure)

__all__ = [
    "FolderImages", "MIN_IMAGES", "RECOMMENDED_IMAGES", "SmallSampleWarning",
    "load_folder_images", "warn_sample_size", "CorruptWeightsError", "FEATURE_CHOICES",
    "FID_HELPER_DIST", "FID_HELPER_FILE", "FID_HELPER_PACKAGE", "FID_HELPER_SHA256",
    "FidHelperInceptionFeatures", "INCEPTION_ENV", "INCEPTION_FILE", "INCEPTION_URL",
    "InceptionFeatures", "InceptionWeightsUnavailableError", "RandomConvFeatures",
    "extract_features", "feature_settings", "fid_helper_inception_path",
    "inception_weights_path", "make_feature_extractor", "metric_labels",
    "nvidia_bilinear_resize", "frechet_distance", "kernel_distance", "density_coverage",
    "precision_recall", "MS_SSIM_BETAS", "ms_ssim_diversity", "ms_ssim_scales",
    "EDIT_MASK_COLUMNS", "SOURCE_COLUMNS", "inpainting_change", "is_inpainting_folder",
    "source_crop_of", "CONFIDENCE", "REAL_TRAIN_ROW", "cluster_ids", "fid_from_features",
    "flat_image_metrics", "folder_features", "image_metrics", "kid_unbiased",
    "generator_colour", "is_random_model_folder", "markdown_table", "sample_grid_figure",
]
