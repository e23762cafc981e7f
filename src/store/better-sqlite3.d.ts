// better-sqlite3 ships no type declarations and @types/better-sqlite3 is not installed; this
// declares the small part the store uses (Kysely's SqliteDialect brings its own interface).
declare module 'better-sqlite3' {
  namespace BetterSqlite3 {
    interface Statement {
      all(...params: unknown[]): unknown[];
      get(...params: unknown[]): unknown;
      run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
      iterate(...params: unknown[]): IterableIterator<unknown>;
      readonly reader: boolean;
    }
    interface Database {
      prepare(sql: string): Statement;
      pragma(source: string, options?: { simple?: boolean }): unknown;
      exec(sql: string): Database;
      /** SQLite's online backup API: a consistent copy while other connections keep writing. */
      backup(destination: string): Promise<{ totalPages: number; remainingPages: number }>;
      close(): void;
    }
  }
  const BetterSqlite3: {
    new (
      filename: string,
      options?: { readonly?: boolean; fileMustExist?: boolean },
    ): BetterSqlite3.Database;
  };
  export default BetterSqlite3;
}
