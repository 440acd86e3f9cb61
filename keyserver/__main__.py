import sys

from keyserver.cli import main

sys.exit(main())
