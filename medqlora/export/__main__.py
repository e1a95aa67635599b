"""python -m medqlora.export --fetch-llama-cpp: llama.cpp's converter into the kit's cache."""

import subprocess
import sys

from .. import signals
from ..errors import MedQLoRAError
from ..secrets import printable
from .llama_cpp import fetch_llama_cpp_converter

USAGE = "usage: python -m medqlora.export --fetch-llama-cpp"


def main(argv: list[str]) -> int:
    if argv != ["--fetch-llama-cpp"]:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        with signals.stop_like_ctrl_c():  # SIGTERM, SIGHUP...: stopped like Ctrl-C, pip with it
            print(fetch_llama_cpp_converter())
    except subprocess.CalledProcessError as err:
        print(f"medqlora: error: pip could not download llama.cpp's source (llama-cpp-python, exit {err.returncode}; "
              "its messages are above). On a machine without a package index, copy a llama.cpp checkout here and "
              "set LLAMA_CPP_DIR to it.", file=sys.stderr)
        return 2
    except MedQLoRAError as err:
        print(f"medqlora: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # extracting into the cache: a full disk, a folder made read-only meanwhile
        print(f"medqlora: error: cannot write llama.cpp's converter to {printable(err.filename or 'the cache')}: "
              f"{err.strerror}. Free some space, or point MEDQLORA_CACHE at a folder you can write.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmedqlora: interrupted ({signals.name(signals.received())}). Nothing was fetched; run the command "
              "again to fetch llama.cpp's converter.", file=sys.stderr)
        return signals.exit_code()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
