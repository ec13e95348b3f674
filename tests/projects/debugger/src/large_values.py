"""Values too large to print: a 12 MB string and a 50 MB one, held while the script is paused."""


def main():
    notes = "n" * 12_000_000
    log = "x" * 50_000_000
    count = len(notes) + len(log)
    print(f"{count} characters", flush=True)  # stop here


main()
