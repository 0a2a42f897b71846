"""Accuracy evaluation of the person models on real, hand-labelled photographs (eval/README.md)."""
