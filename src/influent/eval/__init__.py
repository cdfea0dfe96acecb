"""Ground truth for influence scores: leave-one-out retraining, LDS and its noise ceiling, mislabel AUC."""
from .lds import LDSResult, check_lds_options, lds, noise_ceiling, random_subsets
from .loo import LOOResult, leave_one_out, newton_step_norms, pearson, query_losses, spearman
from .mislabel import detection_auc, flip_labels
from .retrain import ConvergenceWarning, Retrained, Retrainer, default_cache_dir

__all__ = ["Retrainer", "Retrained", "ConvergenceWarning", "default_cache_dir",
           "leave_one_out", "LOOResult", "newton_step_norms", "query_losses", "pearson", "spearman",
           "lds", "noise_ceiling", "LDSResult", "random_subsets", "check_lds_options",
           "flip_labels", "detection_auc"]
