from vitprune.cli import main

raise SystemExit(main())
