"""The two methods: DSAL (M-DSC ranking and routing) and ALNT (gradient re-weighting of pseudo-labels)."""
