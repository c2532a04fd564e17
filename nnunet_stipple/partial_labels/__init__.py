"""Partially labeled datasets (issue 17; O. Petit's thesis, chapter 3, INERRANT): the declaration of which classes
each case annotates, the ambiguity maps and masked per-class losses, the network's fixed background logit."""
