-- A pass no longer looks for rows lacking remote credentials before it reads its rows: it fills
-- them from the rows it reads (reconcile::fill). The partial index of 0011 for that look-up has
-- no reader left, and every credential write maintained it.
DROP INDEX IF EXISTS extensions_lacking_credentials;
