"""brainmri: rebuild a deduplicated brain-MRI tumour dataset and train a tumour classifier."""

__version__ = "0.1.0"
