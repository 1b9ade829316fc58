"""The last mile: the picks file, the review page and exports."""
