"""bench/plain_loop.py with the hf backend's frozen weights left in fp32, as PEFT's prepare_model_for_kbit_training
leaves them (the kit before it froze the base without that upcast): the old path, for side-by-side figures.

    python bench/plain_loop_fp32_frozen.py --out OUT --backend hf ...   # the same arguments as plain_loop.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medqlora.backends.lora as lora  # noqa: E402


def peft_kbit_preparation(model, checkpointing: bool) -> None:
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                    gradient_checkpointing_kwargs={"use_reentrant": False})


lora.freeze_base = peft_kbit_preparation

import plain_loop  # noqa: E402

if __name__ == "__main__":
    sys.exit(plain_loop.main(sys.argv[1:]))
