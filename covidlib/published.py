"""Results others published, quoted with their source, for the book's tables to set beside its own.

These are the only numbers in the book that no chapter computes: each is a quotation, with the
paper (or the report section) and the protocol it was measured under, so a reader can judge how
far it compares with a cross-validated number here. Introduced in chapter 09.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedResult:
    """One published number: what was measured, its value, on what data, by which protocol, where."""

    method: str
    value: float
    metric: str
    data: str
    protocol: str
    source: str


#: The report's Table 5.1 (section 5.2.3): Dice by network, initialisation and split; ``None``
#: where the report left the cell empty. Its "validation" and "test" are the report's own splits
#: of 50 + 20 CT volumes sliced to 2D, not COVID-SemiSeg.
REPORT_TABLE_5_1: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {
    "unet": {
        "scratch": {"10-40": {"train": 0.9894, "val": 0.7012, "test": 0.6893},
                    "40-10": {"train": 0.9705, "val": 0.8119, "test": 0.8012}},
        "decoder": {"10-40": {"train": 0.9771, "val": 0.7963, "test": None},
                    "40-10": {"train": 0.9693, "val": 0.0, "test": None}},
        "all": {"10-40": {"train": 0.9802, "val": None, "test": None},
                "40-10": {"train": 0.9562, "val": None, "test": None}},
    },
    "attention-unet": {
        "scratch": {"10-40": {"train": 0.9904, "val": None, "test": None},
                    "40-10": {"train": 0.9710, "val": None, "test": None}},
        "decoder": {"10-40": {"train": 0.9521, "val": None, "test": None},
                    "40-10": {"train": 0.9512, "val": None, "test": None}},
        "all": {"10-40": {"train": 0.9608, "val": None, "test": None},
                "40-10": {"train": 0.9611, "val": None, "test": None}},
    },
}

#: The report's best fully supervised result (section 5.2.2): 2D U-Net with rotation, elastic and mixup.
REPORT_BEST = {"train": 0.990321, "val": 0.803601, "test": 0.799356}

_INFNET = "Fan et al., Inf-Net, IEEE TMI 39(8), 2020, Table II"
_SEMISEG_TEST = "COVID-SemiSeg test split (48 slices), trained on its 50 labelled slices"
_SEMISEG_TEST_SEMI = ("COVID-SemiSeg test split (48 slices), trained on its 50 labelled slices and its 1600 unlabelled "
                      "ones (pseudo-labelled)")
_INFNET_PROTOCOL = "mean Dice over 256 thresholds after per-image min-max rescaling (Inf-Net's protocol)"

#: Published results on COVID-SemiSeg and on COVID-19-CT-Seg (Ma et al.'s benchmark).
PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult("U-Net", 0.439, "Dice", _SEMISEG_TEST, _INFNET_PROTOCOL, _INFNET),
    PublishedResult("U-Net++", 0.581, "Dice", _SEMISEG_TEST, _INFNET_PROTOCOL, _INFNET),
    PublishedResult("Inf-Net", 0.682, "Dice", _SEMISEG_TEST, _INFNET_PROTOCOL, _INFNET),
    PublishedResult("Semi-Inf-Net", 0.739, "Dice", _SEMISEG_TEST_SEMI, _INFNET_PROTOCOL, _INFNET),
    PublishedResult("nnU-Net 2D", 0.609, "Dice (infection)", "COVID-19-CT-Seg, 20 volumes, 5-fold",
                    "volume Dice at 0.5", "Ma et al., Med. Phys. 48(3), 2021 (COVID-19-CT-Seg benchmark)"),
    PublishedResult("nnU-Net 3D", 0.673, "Dice (infection)", "COVID-19-CT-Seg, 20 volumes, 5-fold",
                    "volume Dice at 0.5", "Ma et al., Med. Phys. 48(3), 2021 (COVID-19-CT-Seg benchmark)"),
)


def published(method: str) -> PublishedResult:
    """The published result of ``method`` (a name of :data:`PUBLISHED`)."""
    for result in PUBLISHED:
        if result.method == method:
            return result
    raise KeyError(f"no published result for {method!r}; known: {', '.join(r.method for r in PUBLISHED)}")
