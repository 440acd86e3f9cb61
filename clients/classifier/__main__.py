import sys

from clients.classifier.service import main

sys.exit(main())
