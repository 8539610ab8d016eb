"""``python -m anyref.convert lisa SRC --clip CLIP_DIR --out DIR``."""
import sys

from anyref.convert import main

sys.exit(main())
