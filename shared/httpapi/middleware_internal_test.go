package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestRouterRunsAMatchedHandlerOnce: ServeMux matches the escaped path, so
// /things/%2E%2E is the route /things/{id} with id "..", and problemRouter
// runs its handler once, not once to see what it answers and again.
func TestRouterRunsAMatchedHandlerOnce(t *testing.T) {
	calls := 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST /things/{id}", func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.WriteHeader(http.StatusAccepted)
	})
	for _, p := range []string{"/things/x", "/things/%2E%2E", "/things/%2e"} {
		calls = 0
		w := httptest.NewRecorder()
		problemRouter(mux).ServeHTTP(w, httptest.NewRequest(http.MethodPost, p, nil))
		if w.Code != http.StatusAccepted || calls != 1 {
			t.Errorf("POST %s: %d after %d runs of the handler, want 202 after one", p, w.Code, calls)
		}
	}
}
