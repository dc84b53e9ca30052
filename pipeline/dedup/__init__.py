"""Near-duplicate removal and the splits: MinHash LSH (minhash) and the cluster-aware
train/val/test split with decontamination (split)."""
