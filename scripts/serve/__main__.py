from scripts.serve.cli import main

raise SystemExit(main())
