"""What each MLproject entry point runs: train (train_basic), tune (track), register
(promote, candidates), wrap (custom_model, with its checks), score (batch_score, with its
pandas and Spark engines) and chain (main, with its step cache); and entry_points, the one
declaration of every entry point's parameters."""
