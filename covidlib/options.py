"""The command line's choices and defaults as plain data: names, sizes, no torch.

``python -m covidlib <command> --help`` lists the networks, losses, mixed-precision settings,
lung-mask methods, pseudo-label rules and semi-supervised methods, and the default sizes of
``semi`` and ``train --semi``; the modules that use them import torch (3-4 s on a 2-core CPU), so
they live here and the command line reads them without importing torch. The library modules
import the plain tuples and sizes from here; a registry that maps a name to code stays where its
code is (:data:`covidlib.losses.LOSSES`, :data:`covidlib.models.MODELS`,
:data:`covidlib.mean_teacher.SEMI_METHODS`), and ``tests/test_options.py`` checks that its keys
are the names here.
"""

from __future__ import annotations

#: Mixed precision of training and prediction (:func:`covidlib.train.resolve_amp`).
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
#: The keys of :data:`covidlib.losses.LOSSES`.
LOSS_NAMES = ("ce", "wce", "dice", "ce+dice", "hd")
#: The keys of :data:`covidlib.models.MODELS`.
MODEL_NAMES = ("unet", "attention-unet")
#: How a scan's lungs are masked (:func:`covidlib.preprocess.resolve_lung_method`).
LUNG_METHODS = ("auto", "lungmask", "classical")
#: Which pseudo-labels are kept (:class:`covidlib.pseudo.PseudoLabelConfig`).
PSEUDO_LABEL_RULES = ("top2", "top1_band")
#: The keys of :data:`covidlib.mean_teacher.SEMI_METHODS`: ``train --semi``'s methods.
SEMI_METHOD_NAMES = ("pseudo-labels", "mean-teacher", "both")

#: Sizes of ``semi`` without and with ``--quick``; explicit flags win. Full = the reported CV run.
SEMI_FULL = {"image_size": 128, "base_width": 16, "epochs": 25, "semi_epochs": 8, "batch_size": 8,
             "max_steps_per_epoch": None}
SEMI_QUICK = {"image_size": 64, "base_width": 8, "epochs": 6, "semi_epochs": 3, "batch_size": 4,
              "max_steps_per_epoch": 4}
#: With ``--quick`` and no ``--unlabelled``: at most this many unlabelled images (else all of them).
QUICK_UNLABELLED = 64
