import sys

from clients.loader.main import main

sys.exit(main())
