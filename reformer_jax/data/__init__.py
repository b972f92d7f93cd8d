"""Datasets: the duplication task (synthetic.py), enwik8 and Imagenet64.

Every dataset yields dicts {"tokens": int32 [b, l], "weights": float32 [b, l]}
from an iterator with a saveable position (`get_state` / `set_state`), so a
killed run resumes on exactly the batch it would have seen next.
"""
