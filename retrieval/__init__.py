"""Retrieval: embedders, the LoRA weight encoder, the vector index and the retriever."""
