"""``python -m onnxprune``: the command line."""
import sys

from onnxprune.cli.app import main

sys.exit(main())
