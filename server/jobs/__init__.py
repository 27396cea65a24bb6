"""Operations jobs: validation and cleanup of stored groups, storage setup."""
