from scripts.harness.reliability.cli import main

raise SystemExit(main())
