from reelgen.cli import main

raise SystemExit(main())
