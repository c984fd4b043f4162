"""natra.reference: the numpy model, the executable specification of the data path."""
