"""``python -m onnxprune.cli``."""
import sys

from onnxprune.cli.app import main

sys.exit(main())
