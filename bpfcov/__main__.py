import sys

from bpfcov.cli import main

sys.exit(main())
