"""Synthetic discriminative training data (paper section 2): pairs (original, locally edited) of images whose
difference lies where the VPG does not look, each with a sentence stating the difference, plus captions."""
