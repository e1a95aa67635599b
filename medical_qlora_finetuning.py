#!/usr/bin/env python3
"""Medical QLoRA fine-tuning: python medical_qlora_finetuning.py --mode full [--config FILE] [--set k=v]."""

import sys

from medqlora.cli import main

if __name__ == "__main__":
    sys.exit(main())
