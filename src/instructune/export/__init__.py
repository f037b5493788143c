"""Export: what other tools load from a tuned model.

merge.py folds a LoRA adapter into its base (a plain transformers folder) and is the `instructune
export` command; gguf.py writes one GGUF file (weights, hyperparameters, chat template) for
llama.cpp, Ollama and LM Studio, with gguf_tokenizer.py (the tokenizer as GGUF metadata) and
modelfile.py (the Ollama Modelfile beside it).
"""
