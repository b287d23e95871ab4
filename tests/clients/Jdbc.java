// pgjdbc (Debian's libpostgresql-jdbc-java) against fedsql: prints one
// JSON-ish line per check for tests/python/test_other_clients.py.
// Usage: java -cp postgresql.jar Jdbc.java PORT
import java.sql.*;
import java.util.*;

public class Jdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/demo?user=fedsql";
        try (Connection conn = DriverManager.getConnection(url)) {
            // A prepared statement with a parameter (extended protocol).
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT customer_id, income, region FROM bank.customers WHERE customer_id <= ? ORDER BY customer_id")) {
                ps.setLong(1, 3);
                try (ResultSet rs = ps.executeQuery()) {
                    StringBuilder sb = new StringBuilder("rows");
                    while (rs.next()) {
                        sb.append(' ').append(rs.getLong(1)).append(',').append(rs.getDouble(2)).append(',').append(rs.getString(3));
                    }
                    System.out.println(sb);
                }
            }
            // A fetch size inside a transaction: pgjdbc reads through a portal in pages.
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(100);
                long n = 0, sum = 0;
                try (ResultSet rs = st.executeQuery("SELECT value FROM generate_series(1, 5000)")) {
                    while (rs.next()) { n++; sum += rs.getLong(1); }
                }
                System.out.println("paged " + n + " " + sum);
            }
            conn.commit();
            conn.setAutoCommit(true);
            DatabaseMetaData md = conn.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "bank", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            Collections.sort(tables);
            System.out.println("tables " + String.join(",", tables));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "bank", "customers", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            System.out.println("columns " + String.join(",", columns));
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM bank.nope");
            } catch (SQLException e) {
                System.out.println("error " + e.getSQLState());
            }
        }
    }
}
