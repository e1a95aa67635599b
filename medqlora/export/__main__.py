"""python -m medqlora.export --fetch-llama-cpp: llama.cpp's converter into the kit's cache."""

import sys

from .llama_cpp import fetch_llama_cpp_converter

if sys.argv[1:] == ["--fetch-llama-cpp"]:
    print(fetch_llama_cpp_converter())
else:
    print("usage: python -m medqlora.export --fetch-llama-cpp")
