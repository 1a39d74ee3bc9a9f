"""Networks: backbones, the siamese verification network, the retrieval embedding model."""
