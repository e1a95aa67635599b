"""python -m medqlora.export --fetch-llama-cpp: llama.cpp's converter into the kit's cache."""

from . import main

main()
