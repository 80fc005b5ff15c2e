// GraphiQL for this server: queries and mutations over HTTP, subscriptions over a
// WebSocket (graphql-transport-ws) to the same origin, both carrying the token written in
// the Headers tab. No file comes from anywhere but this server.
(function () {
  "use strict";

  var root = document.getElementById("graphiql");
  if (
    typeof React === "undefined" ||
    typeof ReactDOM === "undefined" ||
    typeof GraphiQL === "undefined" ||
    typeof GraphiQLPluginExplorer === "undefined" ||
    typeof graphqlWs === "undefined"
  ) {
    // A clone where `make install` never copied the locked packages (no npm then).
    root.textContent =
      "GraphiQL's files did not load from this server. Run `make install` " +
      "(it needs Node.js and npm once, to install frontend/package-lock.json).";
    root.className = "cg-loading";
    return;
  }

  // The Headers tab starts with this; a value still holding the placeholder is not sent,
  // so register/login work before a token is pasted in.
  var PLACEHOLDER = "<access token from register or login>";
  var DEFAULT_HEADERS = JSON.stringify({ Authorization: "Bearer " + PLACEHOLDER }, null, 2);

  var DEFAULT_QUERY = [
    "# Crewgraph GraphiQL: everything on this page is served by this API.",
    "#",
    "# 1. Run `register` (a new team) or `login` below; copy `accessToken`.",
    "# 2. Paste it into the Headers tab (bottom) in place of the placeholder:",
    '#      { "Authorization": "Bearer eyJ..." }',
    '#    An API key goes there too: { "X-API-Key": "cg_..." }',
    "# 3. Queries and mutations send these headers over HTTP; subscriptions",
    "#    send them as the WebSocket's connection_init payload.",
    "#",
    "# Run: Ctrl-Enter. Complete: Ctrl-Space. Explorer: the compass icon.",
    "",
    "mutation Login($email: String!, $password: String!) {",
    "  login(input: { email: $email, password: $password }) {",
    "    accessToken",
    "    user { email tenant { slug } }",
    "  }",
    "}",
    "",
  ].join("\n");

  var GraphQL = GraphiQL.GraphQL;
  var endpoint = window.location.origin + window.location.pathname;
  var wsEndpoint = endpoint.replace(/^http/, "ws");
  var httpFetcher = GraphiQL.createFetcher({ url: endpoint });

  function sentHeaders(headers) {
    var out = {};
    Object.keys(headers || {}).forEach(function (name) {
      var value = headers[name];
      if (typeof value === "string" && value.indexOf(PLACEHOLDER) === -1) {
        out[name] = value;
      }
    });
    return out;
  }

  // One socket per set of credentials: new headers open a new connection (and close the
  // old), so a subscription never runs as someone the Headers tab no longer names.
  var socket = null;
  var socketKey = null;
  function wsClient(headers) {
    var key = JSON.stringify(headers);
    if (socket && socketKey === key) return socket;
    if (socket) socket.dispose();
    socket = graphqlWs.createClient({
      url: wsEndpoint,
      connectionParams: headers,
      lazy: true,
      retryAttempts: 0,
    });
    socketKey = key;
    return socket;
  }

  // GraphiQL names the operation from a parse it debounces: right after an edit the name
  // can be the previous document's. A name the document lacks then means its only operation.
  function resolveOperation(params) {
    var doc;
    try {
      doc = GraphQL.parse(params.query);
    } catch (e) {
      return { params: params, subscription: false }; // the server reports the syntax error
    }
    var op = GraphQL.getOperationAST(doc, params.operationName);
    if (!op && params.operationName) {
      op = GraphQL.getOperationAST(doc);
      if (op) {
        params = Object.assign({}, params, { operationName: op.name ? op.name.value : undefined });
      }
    }
    return { params: params, subscription: Boolean(op) && op.operation === "subscription" };
  }

  function fetcher(graphQLParams, opts) {
    var headers = sentHeaders(opts && opts.headers);
    var resolved = resolveOperation(graphQLParams);
    var params = resolved.params;
    if (resolved.subscription) {
      var client = wsClient(headers);
      return {
        subscribe: function (sink) {
          var dispose = client.subscribe(params, {
            next: function (value) { sink.next(value); },
            complete: function () { sink.complete(); },
            error: function (err) {
              // A refused connection_init closes the socket with a reason (4403: bad token).
              if (err && typeof err.code === "number") {
                sink.next({ errors: [{ message: "WebSocket closed " + err.code + ": " + (err.reason || "") }] });
                sink.complete();
              } else {
                sink.error(err);
              }
            },
          });
          return { unsubscribe: dispose };
        },
      };
    }
    return httpFetcher(params, Object.assign({}, opts, { headers: headers }));
  }

  var explorer = GraphiQLPluginExplorer.explorerPlugin();

  function App() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      plugins: [explorer],
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      // Tokens stay out of localStorage, where any script on this origin could read them.
      shouldPersistHeaders: false,
      inputValueDeprecation: true,
    });
  }

  ReactDOM.createRoot(root).render(React.createElement(App));
})();
