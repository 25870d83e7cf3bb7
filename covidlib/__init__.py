"""covidlib: the helper library of the covid-ct-book.

Small-sample COVID-19 lung-infection segmentation in chest CT: reading scans, Hounsfield
units, a synthetic phantom, preprocessing, augmentation, U-Nets, transfer learning, SVCCA,
pseudo-labels and mean teacher. Each module holds one concept; the book's chapters call them.
"""

from covidlib.errors import InvalidInputError

__version__ = "0.1.0"
__all__ = ["InvalidInputError", "__version__"]
