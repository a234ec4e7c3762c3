"""Workers: the only processes that touch the embedder, the vector store and the LLM."""
