from edgerun.cli import main

main()
