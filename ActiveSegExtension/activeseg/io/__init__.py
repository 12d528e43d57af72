"""Reading and writing files: volumes (NIfTI, NRRD), integrity checks, Slicer .seg.nrrd, atomic writes."""
