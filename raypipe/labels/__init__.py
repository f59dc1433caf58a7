"""Every label a build can store, in one room: the loop detector, final answers and correctness, semantic
clustering, and the catalog that defines, plans, computes and derives them (`catalog.py`). Pure Python: no Ray."""
