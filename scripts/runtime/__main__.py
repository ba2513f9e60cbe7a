import sys

from scripts.runtime.server import main

sys.exit(main())
