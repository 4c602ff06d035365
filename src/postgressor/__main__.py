from postgressor.cli import main

main()
