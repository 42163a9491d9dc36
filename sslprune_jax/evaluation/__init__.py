"""Evaluations of pruned subnetworks (see the README's evaluation section)."""
