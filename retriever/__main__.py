from retriever.daemon.entry import main  # the warm daemon's client first, then retriever.cli

if __name__ == "__main__":  # pragma: no cover
    main()
