"""The last mile: the pick command, the review page and exports."""
