"""ActiveSeg backend engine: active learning for 3D segmentation.

The engine owns the datastore, trains a deeply supervised 3D U-Net, ranks unlabelled cases with DSAL
side-output disagreement (M-DSC) and re-weights pseudo-labelled samples with ALNT. The 3D Slicer module
talks to it over HTTP (``activeseg serve``); ``activeseg`` is also a command-line tool.
"""

import logging

__version__ = "0.1.0"
__all__ = ["__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
