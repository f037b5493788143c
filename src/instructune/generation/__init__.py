"""Generation: answers from a model, on the engine that fits.

generate.py is the one entry point (`generate`, `Decoding`, the engine choice); native.py is the
native PyTorch engine (unpadded prefill, continuous batching); openvino_engine.py is OpenVINO GenAI's
(our own export, paged attention); engine_cache.py keeps converted engines by weights; chat.py is a
multi-turn session over a model and the `instructune chat` command. Hugging Face `generate` is the
reference every engine is tested against and the fallback for decoding the others do not run.
"""
